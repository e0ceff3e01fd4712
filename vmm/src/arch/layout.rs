//! Where things live in guest physical memory. The low addresses follow the conventions Linux
//! and Firecracker use, so a guest kernel finds what it expects.

/// The GDT the boot vCPU starts with.
pub const BOOT_GDT_START: u64 = 0x500;
/// A null IDT: the kernel installs its own before enabling interrupts.
pub const BOOT_IDT_START: u64 = 0x520;
/// The zero page (`struct boot_params`); `rsi` points here at kernel entry.
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The boot stack grows down from here.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// Identity page tables for the first GiB: PML4, PDPT, PD.
pub const PML4_START: u64 = 0x9000;
pub const PDPTE_START: u64 = 0xa000;
pub const PDE_START: u64 = 0xb000;
/// The kernel command line.
pub const CMDLINE_START: u64 = 0x20000;
/// The longest command line the boot protocol lets us pass (`cmdline_size`).
pub const CMDLINE_MAX_SIZE: usize = 4096;
/// The extended BIOS data area: the MP table goes here, where Linux scans for it.
pub const EBDA_START: u64 = 0x9fc00;
/// Start of memory above the legacy hole; the kernel loads above it.
pub const HIMEM_START: u64 = 0x10_0000;
/// RAM ends below this: the 32-bit hole for the local APIC, the IOAPIC and the MMIO devices.
pub const MMIO_GAP_START: u64 = 0xc000_0000;
/// The first virtio-mmio device's registers; each device takes one [`MMIO_DEVICE_SIZE`] window.
pub const MMIO_DEVICES_START: u64 = 0xd000_0000;
pub const MMIO_DEVICE_SIZE: u64 = 0x1000;
/// The IOAPIC and local APIC, as KVM's in-kernel irqchip places them.
pub const IOAPIC_START: u64 = 0xfec0_0000;
pub const APIC_START: u64 = 0xfee0_0000;
/// KVM needs three pages for the TSS, somewhere the guest does not use.
pub const KVM_TSS_ADDRESS: usize = 0xfffb_d000;
/// IRQs given to virtio-mmio devices: legacy ISA lines 0-4 are left to the PIT, keyboard and
/// serial; the IOAPIC has 24 pins.
pub const IRQ_BASE: u32 = 5;
pub const IRQ_MAX: u32 = 23;
/// COM1's IRQ.
pub const SERIAL_IRQ: u32 = 4;

/// `value` for the 32-bit address fields of the boot protocol and the MP table. Meant for
/// `const` items, where a value that does not fit stops the build.
// The assert just before the cast rules out truncation.
#[allow(clippy::cast_possible_truncation)]
pub const fn low32(value: u64) -> u32 {
    assert!(value >> 32 == 0, "not a 32-bit address");
    value as u32
}
