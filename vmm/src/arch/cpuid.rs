//! CPUID as the guest sees it: what KVM supports (`KVM_GET_SUPPORTED_CPUID`), with this vCPU's
//! topology filled in, the hypervisor bit set, and the features of a CPU template masked off.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// One CPUID register of one leaf.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Register {
    Eax,
    Ebx,
    Ecx,
    Edx,
}

/// A feature bit to hide from the guest.
#[derive(Debug, Clone, Copy)]
pub struct FeatureBit {
    pub name: &'static str,
    pub leaf: u32,
    /// `None` for every subleaf.
    pub subleaf: Option<u32>,
    pub register: Register,
    pub bit: u8,
}

const fn bit(
    name: &'static str,
    leaf: u32,
    subleaf: Option<u32>,
    register: Register,
    bit: u8,
) -> FeatureBit {
    FeatureBit {
        name,
        leaf,
        subleaf,
        register,
        bit,
    }
}

/// The features the nested, emulated `kvm_pvm` cannot run at guest CPL0 (see rootfs/kernel/README.md):
/// the guest must never see them, or its kernel patches in instructions that fault.
pub const PVM_TEMPLATE: &[FeatureBit] = &[
    bit("pcid", 1, None, Register::Ecx, 17),
    bit("cx16", 1, None, Register::Ecx, 13),
    bit("popcnt", 1, None, Register::Ecx, 23),
    bit("xsave", 1, None, Register::Ecx, 26),
    bit("osxsave", 1, None, Register::Ecx, 27),
    bit("avx", 1, None, Register::Ecx, 28),
    bit("rdrand", 1, None, Register::Ecx, 30),
    bit("fsgsbase", 7, Some(0), Register::Ebx, 0),
    bit("avx2", 7, Some(0), Register::Ebx, 5),
    bit("smep", 7, Some(0), Register::Ebx, 7),
    bit("invpcid", 7, Some(0), Register::Ebx, 10),
    bit("rdseed", 7, Some(0), Register::Ebx, 18),
    bit("smap", 7, Some(0), Register::Ebx, 20),
    bit("clflushopt", 7, Some(0), Register::Ebx, 23),
    bit("clwb", 7, Some(0), Register::Ebx, 24),
    bit("pku", 7, Some(0), Register::Ecx, 3),
    bit("ospke", 7, Some(0), Register::Ecx, 4),
    bit("rdpid", 7, Some(0), Register::Ecx, 22),
    bit("3dnowprefetch", 0x8000_0001, None, Register::Ecx, 8),
    bit("rdtscp", 0x8000_0001, None, Register::Edx, 27),
];

/// The XSAVE state leaf: meaningless, and misleading, once XSAVE is hidden.
const XSAVE_LEAF: u32 = 0xd;
const HYPERVISOR_BIT: u32 = 1 << 31;
const HTT_BIT: u32 = 1 << 28;

/// Fits the supported CPUID to vCPU `vcpu_id` of `vcpu_count` and hides `masked` features.
pub fn normalize(cpuid: &mut CpuId, vcpu_id: u8, vcpu_count: u8, masked: &[FeatureBit]) {
    let hides_xsave = masked.iter().any(|f| f.name == "xsave");
    for entry in cpuid.as_mut_slice() {
        match entry.function {
            1 => {
                // EBX[31:24] is the initial APIC id, EBX[23:16] the logical processor count.
                entry.ebx = (entry.ebx & 0x0000_ffff)
                    | (u32::from(vcpu_id) << 24)
                    | (u32::from(vcpu_count) << 16);
                entry.ecx |= HYPERVISOR_BIT;
                if vcpu_count > 1 {
                    entry.edx |= HTT_BIT;
                } else {
                    entry.edx &= !HTT_BIT;
                }
            }
            // Extended topology: EDX is the x2APIC id.
            0xb | 0x1f => entry.edx = u32::from(vcpu_id),
            XSAVE_LEAF if hides_xsave => {
                entry.eax = 0;
                entry.ebx = 0;
                entry.ecx = 0;
                entry.edx = 0;
            }
            _ => {}
        }
        for feature in masked {
            if applies(feature, entry) {
                *register(entry, feature.register) &= !(1u32 << feature.bit);
            }
        }
    }
}

fn applies(feature: &FeatureBit, entry: &kvm_cpuid_entry2) -> bool {
    feature.leaf == entry.function && feature.subleaf.is_none_or(|s| s == entry.index)
}

fn register(entry: &mut kvm_cpuid_entry2, register: Register) -> &mut u32 {
    match register {
        Register::Eax => &mut entry.eax,
        Register::Ebx => &mut entry.ebx,
        Register::Ecx => &mut entry.ecx,
        Register::Edx => &mut entry.edx,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            eax: u32::MAX,
            ebx: u32::MAX,
            ecx: u32::MAX,
            edx: u32::MAX,
            ..Default::default()
        }
    }

    #[test]
    fn template_bits_are_cleared_and_topology_is_filled_in() {
        let mut cpuid = CpuId::from_entries(&[
            entry(1, 0),
            entry(7, 0),
            entry(7, 1),
            entry(0xd, 0),
            entry(0xb, 0),
        ])
        .unwrap();
        normalize(&mut cpuid, 3, 4, PVM_TEMPLATE);
        let e = cpuid.as_slice();
        assert_eq!(e[0].ecx & (1 << 13), 0, "cx16 hidden");
        assert_eq!(e[0].ecx & (1 << 26), 0, "xsave hidden");
        assert_ne!(e[0].ecx & HYPERVISOR_BIT, 0);
        assert_eq!(e[0].ebx >> 24, 3);
        assert_eq!((e[0].ebx >> 16) & 0xff, 4);
        assert_eq!(e[1].ebx & (1 << 20), 0, "smap hidden");
        assert_eq!(e[2].ebx, u32::MAX, "leaf 7 subleaf 1 untouched");
        assert_eq!(e[3].eax, 0, "xsave leaf cleared");
        assert_eq!(e[4].edx, 3);
    }

    #[test]
    fn without_a_template_features_stay() {
        let mut cpuid = CpuId::from_entries(&[entry(1, 0), entry(7, 0)]).unwrap();
        normalize(&mut cpuid, 0, 1, &[]);
        assert_ne!(cpuid.as_slice()[0].ecx & (1 << 26), 0);
        assert_eq!(cpuid.as_slice()[1].ebx, u32::MAX);
    }
}
