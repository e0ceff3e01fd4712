//! Just enough of the i8042 keyboard controller for `reboot=k`: the guest reads the status
//! port, then writes the CPU-reset command, and that ends the VM as a clean shutdown.

use super::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::sync::Arc;

/// Ports 0x60 (data) to 0x64 (command/status).
pub const BASE_PORT: u64 = 0x60;
pub const PORT_COUNT: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

pub struct I8042 {
    exit: Arc<ExitSignal>,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> I8042 {
        I8042 { exit }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty and input buffer ready, so the guest's reset loop
        // sends its command at once. There is never keyboard data.
        data.fill(0);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset == COMMAND_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.exit.post(VmExit::Shutdown);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_reset_command_stops_the_vm() {
        let exit = Arc::new(ExitSignal::default());
        let mut dev = I8042::new(exit.clone());
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(exit.get(), None);
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & 0x3, 0);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.get(), Some(VmExit::Shutdown));
    }
}
