//! The Intel MultiProcessor table (MP spec 1.4): how a guest without ACPI learns its CPUs, its
//! IOAPIC and how ISA IRQs reach it. Linux finds it by scanning the EBDA for `_MP_`.
//!
//! The table is a few dozen packed little-endian records, so it is built as bytes rather than
//! through `repr(C, packed)` structs.

use super::layout::{low32, APIC_START, EBDA_START, IOAPIC_START, IRQ_MAX};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const FLOATING_POINTER_LEN: usize = 16;
/// The configuration table follows the floating pointer in the EBDA.
const TABLE_ADDRESS: u32 = low32(EBDA_START + FLOATING_POINTER_LEN as u64);
const IOAPIC_ADDRESS: u32 = low32(IOAPIC_START);
const APIC_ADDRESS: u32 = low32(APIC_START);
const HEADER_LEN: usize = 44;
const SPEC_REVISION: u8 = 4;
const APIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// The largest vCPU count whose table still fits below 1 MiB with room to spare.
pub const MAX_VCPUS: u8 = 64;

const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
const CPU_ENABLED: u8 = 1;
const CPU_BOOT_PROCESSOR: u8 = 2;
const INTERRUPT_INT: u8 = 0;
const INTERRUPT_NMI: u8 = 1;
const INTERRUPT_EXTINT: u8 = 3;
/// Family 6 with the FPU and APIC bits, as Firecracker advertises.
const CPU_SIGNATURE: u32 = (6 << 8) | (1 << 4);
const CPU_FEATURES: u32 = (1 << 0) | (1 << 9);

#[derive(Debug, thiserror::Error)]
pub enum MptableError {
    #[error("{0} vCPUs do not fit in the MP table (at most {MAX_VCPUS})")]
    TooManyVcpus(u8),
    #[error("writing the MP table to guest memory")]
    Write(#[from] vm_memory::GuestMemoryError),
}

/// Writes the floating pointer and the configuration table at [`EBDA_START`].
pub fn write(memory: &GuestMemoryMmap, vcpu_count: u8) -> Result<(), MptableError> {
    let bytes = build(vcpu_count)?;
    memory.write_slice(&bytes, GuestAddress(EBDA_START))?;
    Ok(())
}

/// The floating pointer followed by the configuration table.
pub fn build(vcpu_count: u8) -> Result<Vec<u8>, MptableError> {
    if vcpu_count == 0 || vcpu_count > MAX_VCPUS {
        return Err(MptableError::TooManyVcpus(vcpu_count));
    }
    let ioapic_id = vcpu_count + 1;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    for cpu in 0..vcpu_count {
        let flags = CPU_ENABLED | if cpu == 0 { CPU_BOOT_PROCESSOR } else { 0 };
        entries.extend_from_slice(&[ENTRY_PROCESSOR, cpu, APIC_VERSION, flags]);
        entries.extend_from_slice(&CPU_SIGNATURE.to_le_bytes());
        entries.extend_from_slice(&CPU_FEATURES.to_le_bytes());
        entries.extend_from_slice(&[0; 8]);
        count += 1;
    }
    entries.extend_from_slice(&[ENTRY_BUS, 0]);
    entries.extend_from_slice(b"ISA   ");
    count += 1;
    entries.extend_from_slice(&[ENTRY_IOAPIC, ioapic_id, IOAPIC_VERSION, 1]);
    entries.extend_from_slice(&IOAPIC_ADDRESS.to_le_bytes());
    count += 1;
    // Every IOAPIC pin is wired to the ISA IRQ of the same number, with the bus's default
    // polarity and trigger (flags 0): edge-triggered, which is what an irqfd pulse gives.
    for irq in (0..=IRQ_MAX).filter_map(|irq| u8::try_from(irq).ok()) {
        entries.extend_from_slice(&[ENTRY_IO_INTERRUPT, INTERRUPT_INT, 0, 0, 0, irq]);
        entries.extend_from_slice(&[ioapic_id, irq]);
        count += 1;
    }
    // LINT0 carries the 8259's ExtINT and LINT1 the NMI, as on a PC.
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INTERRUPT_EXTINT, 0, 0, 0, 0, 0, 0]);
    entries.extend_from_slice(&[ENTRY_LOCAL_INTERRUPT, INTERRUPT_NMI, 0, 0, 0, 0, 0xff, 1]);
    count += 2;

    let mut table = Vec::with_capacity(HEADER_LEN + entries.len());
    table.extend_from_slice(b"PCMP");
    let table_len = u16::try_from(HEADER_LEN + entries.len())
        .map_err(|_| MptableError::TooManyVcpus(vcpu_count))?;
    table.extend_from_slice(&table_len.to_le_bytes());
    table.extend_from_slice(&[SPEC_REVISION, 0]);
    table.extend_from_slice(b"LAMBDAVM");
    table.extend_from_slice(b"MICROVM     ");
    table.extend_from_slice(&0u32.to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes());
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&APIC_ADDRESS.to_le_bytes());
    table.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(table.len(), HEADER_LEN);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);

    let mut floating = Vec::with_capacity(FLOATING_POINTER_LEN);
    floating.extend_from_slice(b"_MP_");
    floating.extend_from_slice(&TABLE_ADDRESS.to_le_bytes());
    floating.extend_from_slice(&[1, SPEC_REVISION, 0, 0, 0, 0, 0, 0]);
    floating[10] = checksum(&floating);

    floating.extend_from_slice(&table);
    Ok(floating)
}

/// The byte that makes the record's bytes sum to zero.
fn checksum(bytes: &[u8]) -> u8 {
    let sum = bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b));
    0u8.wrapping_sub(sum)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    #[test]
    fn both_records_check_out_and_count_their_entries() {
        for cpus in [1, 2, 8] {
            let bytes = build(cpus).unwrap();
            assert_eq!(&bytes[..4], b"_MP_");
            assert_eq!(sum(&bytes[..16]), 0);
            let table = &bytes[16..];
            assert_eq!(&table[..4], b"PCMP");
            let len = u16::from_le_bytes([table[4], table[5]]) as usize;
            assert_eq!(len, table.len());
            assert_eq!(sum(table), 0);
            let count = u16::from_le_bytes([table[34], table[35]]);
            assert_eq!(count as usize, cpus as usize + 2 + 24 + 2);
        }
    }

    #[test]
    fn vcpu_counts_out_of_range_are_refused() {
        assert!(build(0).is_err());
        assert!(build(MAX_VCPUS + 1).is_err());
    }
}
