//! Devices: the legacy port-I/O ones (serial, i8042), the buses that route exits to devices,
//! and the virtio devices with their MMIO transport.

pub mod bus;
pub mod i8042;
pub mod serial;
pub mod virtio;
