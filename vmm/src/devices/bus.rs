//! Address buses for port I/O and MMIO exits: each device owns a range, and an access is
//! handed to the device with its offset inside that range.

use std::sync::{Arc, Mutex};

/// A device on a bus. Called from vCPU threads.
pub trait BusDevice: Send {
    fn read(&mut self, offset: u64, data: &mut [u8]);
    fn write(&mut self, offset: u64, data: &[u8]);
}

#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps a device already there")]
pub struct Overlap {
    pub base: u64,
    pub len: u64,
}

struct Entry {
    base: u64,
    len: u64,
    device: Arc<Mutex<dyn BusDevice>>,
}

#[derive(Default)]
pub struct Bus {
    entries: Vec<Entry>,
}

impl Bus {
    pub fn insert(
        &mut self,
        base: u64,
        len: u64,
        device: Arc<Mutex<dyn BusDevice>>,
    ) -> Result<(), Overlap> {
        let end = base.checked_add(len).ok_or(Overlap { base, len })?;
        if len == 0
            || self
                .entries
                .iter()
                .any(|e| base < e.base + e.len && e.base < end)
        {
            return Err(Overlap { base, len });
        }
        self.entries.push(Entry { base, len, device });
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(&Entry, u64)> {
        self.entries
            .iter()
            .find(|e| addr >= e.base && addr - e.base < e.len)
            .map(|e| (e, addr - e.base))
    }

    /// Reads from the device at `addr`; `false` if nothing is there.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        self.with_device(addr, |device, offset| device.read(offset, data))
    }

    /// Writes to the device at `addr`; `false` if nothing is there.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        self.with_device(addr, |device, offset| device.write(offset, data))
    }

    /// Runs `access` on the device at `addr` (locked) with the offset into its range; `false`
    /// if nothing is there.
    fn with_device(&self, addr: u64, access: impl FnOnce(&mut dyn BusDevice, u64)) -> bool {
        let Some((entry, offset)) = self.find(addr) else {
            return false;
        };
        access(
            &mut *entry.device.lock().unwrap_or_else(|e| e.into_inner()),
            offset,
        );
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + u8::try_from(offset).unwrap());
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn accesses_reach_the_device_with_their_offset() {
        let mut bus = Bus::default();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(1)))).unwrap();
        assert!(bus.insert(0x12, 4, Arc::new(Mutex::new(Echo(0)))).is_err());
        assert!(bus.insert(0, 0, Arc::new(Mutex::new(Echo(0)))).is_err());
        let mut data = [0u8; 1];
        assert!(bus.read(0x12, &mut data));
        assert_eq!(data[0], 3);
        assert!(bus.write(0x10, &[7]));
        assert!(bus.read(0x10, &mut data));
        assert_eq!(data[0], 7);
        assert!(!bus.read(0x14, &mut data));
    }
}
