//! The x86_64 machine: memory layout, the Linux boot protocol, the MP table, CPUID and the
//! register state a 64-bit kernel expects at its entry point.

pub mod boot_params;
pub mod cpuid;
pub mod layout;
pub mod mptable;
pub mod regs;
