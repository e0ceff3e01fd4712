//! The state a 64-bit Linux kernel expects at its ELF entry point: long mode with identity-mapped
//! page tables, flat segments, `rsi` pointing at the zero page, the boot MSRs, a sane FPU, and the
//! local APIC's LINT pins wired like a PC's.

use super::layout::{
    BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, PDE_START, PDPTE_START, PML4_START,
    ZERO_PAGE_START,
};
use kvm_bindings::{
    kvm_fpu, kvm_lapic_state, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs, Msrs,
};
use kvm_ioctls::VcpuFd;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const X86_CR0_PE: u64 = 0x1;
const X86_CR0_PG: u64 = 0x8000_0000;
const X86_CR4_PAE: u64 = 0x20;
const EFER_LME: u64 = 0x100;
const EFER_LMA: u64 = 0x400;

const MSR_IA32_SYSENTER_CS: u32 = 0x174;
const MSR_IA32_SYSENTER_ESP: u32 = 0x175;
const MSR_IA32_SYSENTER_EIP: u32 = 0x176;
const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_CSTAR: u32 = 0xc000_0083;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;
const MSR_KERNEL_GS_BASE: u32 = 0xc000_0102;
const MSR_IA32_TSC: u32 = 0x10;
const MSR_IA32_MISC_ENABLE: u32 = 0x1a0;
const MSR_MTRR_DEF_TYPE: u32 = 0x2ff;
const MISC_ENABLE_FAST_STRING: u64 = 1;
/// MTRRs enabled, default type write-back: without it the kernel maps all RAM uncached.
const MTRR_ENABLE_WRITE_BACK: u64 = (1 << 11) | 6;

const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const APIC_MODE_NMI: u32 = 0x4;
const APIC_MODE_EXTINT: u32 = 0x7;

#[derive(Debug, thiserror::Error)]
pub enum RegsError {
    #[error("writing boot tables to guest memory")]
    Memory(#[from] vm_memory::GuestMemoryError),
    #[error("{what}")]
    Kvm {
        what: &'static str,
        source: kvm_ioctls::Error,
    },
    #[error("KVM took {set} of the {wanted} boot MSRs")]
    Msrs { set: usize, wanted: usize },
}

fn kvm(what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> RegsError {
    move |source| RegsError::Kvm { what, source }
}

/// Sets up the boot vCPU to enter a 64-bit kernel at `entry`.
pub fn setup_boot_vcpu(
    vcpu: &VcpuFd,
    memory: &GuestMemoryMmap,
    entry: u64,
) -> Result<(), RegsError> {
    setup_msrs(vcpu)?;
    setup_sregs(vcpu, memory)?;
    setup_fpu(vcpu)?;
    let regs = kvm_regs {
        rflags: 0x2,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START,
        ..Default::default()
    };
    vcpu.set_regs(&regs).map_err(kvm("KVM_SET_REGS"))?;
    Ok(())
}

/// The MSRs every vCPU starts with.
pub fn setup_msrs(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let entries: Vec<kvm_msr_entry> = [
        (MSR_IA32_SYSENTER_CS, 0),
        (MSR_IA32_SYSENTER_ESP, 0),
        (MSR_IA32_SYSENTER_EIP, 0),
        (MSR_STAR, 0),
        (MSR_CSTAR, 0),
        (MSR_KERNEL_GS_BASE, 0),
        (MSR_SYSCALL_MASK, 0),
        (MSR_LSTAR, 0),
        (MSR_IA32_TSC, 0),
        (MSR_IA32_MISC_ENABLE, MISC_ENABLE_FAST_STRING),
        (MSR_MTRR_DEF_TYPE, MTRR_ENABLE_WRITE_BACK),
    ]
    .into_iter()
    .map(|(index, data)| kvm_msr_entry {
        index,
        data,
        ..Default::default()
    })
    .collect();
    let msrs = Msrs::from_entries(&entries).map_err(|_| RegsError::Msrs {
        set: 0,
        wanted: entries.len(),
    })?;
    let set = vcpu.set_msrs(&msrs).map_err(kvm("KVM_SET_MSRS"))?;
    if set != entries.len() {
        return Err(RegsError::Msrs {
            set,
            wanted: entries.len(),
        });
    }
    Ok(())
}

fn setup_fpu(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).map_err(kvm("KVM_SET_FPU"))
}

/// A GDT descriptor from its flags (access byte and the granularity nibble), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    ((base as u64 & 0xff00_0000) << 32)
        | ((flags as u64 & 0xf0ff) << 40)
        | ((limit as u64 & 0x000f_0000) << 32)
        | ((base as u64 & 0x00ff_ffff) << 16)
        | (limit as u64 & 0x0000_ffff)
}

/// The KVM view of GDT entry `index`.
fn segment(entry: u64, index: u8) -> kvm_segment {
    // Every mask passed is at most 0xff, so the field fits a u8.
    #[allow(clippy::cast_possible_truncation)]
    let field = |shift: u32, mask: u64| ((entry >> shift) & mask) as u8;
    let granular = field(55, 1) == 1;
    // Twenty bits of limit fit a u32.
    #[allow(clippy::cast_possible_truncation)]
    let limit = ((entry & 0xffff) | ((entry >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((entry >> 16) & 0xff_ffff) | ((entry >> 32) & 0xff00_0000),
        limit: if granular {
            (limit << 12) | 0xfff
        } else {
            limit
        },
        selector: u16::from(index) * 8,
        type_: field(40, 0xf),
        present: field(47, 1),
        dpl: field(45, 3),
        db: field(54, 1),
        s: field(44, 1),
        l: field(53, 1),
        g: field(55, 1),
        avl: field(52, 1),
        unusable: u8::from(field(47, 1) == 0),
        padding: 0,
    }
}

/// The boot vCPU's GDT: null, 64-bit code, data, TSS.
const BOOT_GDT: [u64; 4] = [
    0,
    gdt_entry(0xa09b, 0, 0xfffff),
    gdt_entry(0xc093, 0, 0xfffff),
    gdt_entry(0x808b, 0, 0xfffff),
];
/// Four 8-byte entries: a limit of 31, which fits.
#[allow(clippy::cast_possible_truncation)]
const GDT_LIMIT: u16 = (std::mem::size_of::<[u64; 4]>() - 1) as u16;

fn setup_sregs(vcpu: &VcpuFd, memory: &GuestMemoryMmap) -> Result<(), RegsError> {
    let mut sregs: kvm_sregs = vcpu.get_sregs().map_err(kvm("KVM_GET_SREGS"))?;

    let gdt = BOOT_GDT;
    for (i, entry) in gdt.iter().enumerate() {
        memory.write_obj(*entry, GuestAddress(BOOT_GDT_START + 8 * i as u64))?;
    }
    memory.write_obj(0u64, GuestAddress(BOOT_IDT_START))?;
    sregs.gdt.base = BOOT_GDT_START;
    sregs.gdt.limit = GDT_LIMIT;
    sregs.idt.base = BOOT_IDT_START;
    sregs.idt.limit = 7;

    let code = segment(gdt[1], 1);
    let data = segment(gdt[2], 2);
    sregs.cs = code;
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(gdt[3], 3);

    // Identity-map the first GiB with 2 MiB pages: enough for the kernel to reach its own
    // page-table setup.
    memory.write_obj(PDPTE_START | 0x03, GuestAddress(PML4_START))?;
    memory.write_obj(PDE_START | 0x03, GuestAddress(PDPTE_START))?;
    for i in 0..512u64 {
        memory.write_obj((i << 21) | 0x83, GuestAddress(PDE_START + i * 8))?;
    }
    sregs.cr3 = PML4_START;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;

    vcpu.set_sregs(&sregs).map_err(kvm("KVM_SET_SREGS"))
}

/// Wires LINT0 to the 8259 (ExtINT) and LINT1 to NMI, as a PC's firmware would.
pub fn setup_lint(vcpu: &VcpuFd) -> Result<(), RegsError> {
    let mut lapic: kvm_lapic_state = vcpu.get_lapic().map_err(kvm("KVM_GET_LAPIC"))?;
    set_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
    set_delivery_mode(&mut lapic, APIC_LVT1, APIC_MODE_NMI);
    vcpu.set_lapic(&lapic).map_err(kvm("KVM_SET_LAPIC"))
}

fn set_delivery_mode(lapic: &mut kvm_lapic_state, offset: usize, mode: u32) {
    let reg = &mut lapic.regs[offset..offset + 4];
    // The LAPIC page is `c_char`s; the register is their bytes, as they are.
    let bytes: [u8; 4] = std::array::from_fn(|i| u8::from_ne_bytes(reg[i].to_ne_bytes()));
    let value = (u32::from_le_bytes(bytes) & !0x700) | (mode << 8);
    for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
        *dst = i8::from_ne_bytes([src]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_segment_is_64_bit_present_and_flat() {
        let code = segment(gdt_entry(0xa09b, 0, 0xfffff), 1);
        assert_eq!((code.l, code.db, code.present, code.s), (1, 0, 1, 1));
        assert_eq!(code.type_, 0xb);
        assert_eq!(code.limit, 0xffff_ffff);
        assert_eq!(code.selector, 8);
        let data = segment(gdt_entry(0xc093, 0, 0xfffff), 2);
        assert_eq!((data.l, data.db, data.type_), (0, 1, 3));
    }

    #[test]
    fn lint_delivery_modes_keep_the_other_bits() {
        let mut lapic = kvm_lapic_state::default();
        lapic.regs[APIC_LVT0] = 0x31;
        lapic.regs[APIC_LVT0 + 2] = 0x1; // masked bit 16
        set_delivery_mode(&mut lapic, APIC_LVT0, APIC_MODE_EXTINT);
        assert_eq!(lapic.regs[APIC_LVT0], 0x31);
        assert_eq!(lapic.regs[APIC_LVT0 + 1], 0x7);
        assert_eq!(lapic.regs[APIC_LVT0 + 2], 0x1);
    }
}
