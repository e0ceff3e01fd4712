//! Just enough of the i8042 keyboard controller for `reboot=k` and Ctrl+Alt+Del: the guest
//! reads the status port, then writes the CPU-reset command, and that ends the VM as a clean
//! shutdown; the API's `SendCtrlAltDel` puts the keys' scan codes in the output buffer and
//! raises the keyboard interrupt (IRQ 1).

use super::bus::BusDevice;
use crate::exit::{ExitSignal, VmExit};
use std::collections::VecDeque;
use std::sync::Arc;
use vmm_sys_util::eventfd::EventFd;

/// Ports 0x60 (data) to 0x64 (command/status).
pub const BASE_PORT: u64 = 0x60;
pub const PORT_COUNT: u64 = 5;
const COMMAND_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;
/// The keyboard's interrupt line.
pub const KEYBOARD_IRQ: u32 = 1;
/// Status bit: the output buffer holds a byte for the guest.
const STATUS_OUTPUT_FULL: u8 = 0x01;
/// Ctrl, Alt and Delete pressed, then released, in scan code set 2 (what a keyboard sends; the
/// controller's translation to set 1 is the guest driver's to ask for).
const CTRL_ALT_DEL: &[u8] = &[
    0x14, 0x11, 0xe0, 0x71, // make: Ctrl, Alt, Delete (extended)
    0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14, // break: Delete, Alt, Ctrl
];

pub struct I8042 {
    exit: Arc<ExitSignal>,
    output: VecDeque<u8>,
    /// Raises IRQ 1 (an irqfd).
    irq: EventFd,
}

impl I8042 {
    pub fn new(exit: Arc<ExitSignal>) -> std::io::Result<I8042> {
        Ok(I8042 {
            exit,
            output: VecDeque::new(),
            irq: EventFd::new(libc::EFD_NONBLOCK)?,
        })
    }

    /// The eventfd that raises the keyboard interrupt, for the VM's irqfd.
    pub fn irq(&self) -> &EventFd {
        &self.irq
    }

    /// Presses and releases Ctrl+Alt+Del: the scan codes wait in the output buffer.
    pub fn send_ctrl_alt_del(&mut self) {
        self.output.extend(CTRL_ALT_DEL);
        let _ = self.irq.write(1);
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        // The input buffer always reads ready, so the guest's reset loop sends its command at
        // once.
        let byte = match offset {
            0 => {
                let byte = self.output.pop_front().unwrap_or(0);
                if !self.output.is_empty() {
                    let _ = self.irq.write(1);
                }
                byte
            }
            COMMAND_OFFSET if !self.output.is_empty() => STATUS_OUTPUT_FULL,
            _ => 0,
        };
        data.fill(0);
        if let Some(first) = data.first_mut() {
            *first = byte;
        }
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
        let mut dev = I8042::new(exit.clone()).unwrap();
        dev.write(0, &[CMD_RESET_CPU]);
        dev.write(COMMAND_OFFSET, &[0xaa]);
        assert_eq!(exit.get(), None);
        let mut status = [0xffu8];
        dev.read(COMMAND_OFFSET, &mut status);
        assert_eq!(status[0] & 0x3, 0);
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(exit.get(), Some(VmExit::Shutdown));
    }

    #[test]
    fn ctrl_alt_del_is_read_byte_by_byte_with_the_interrupt_raised() {
        let mut dev = I8042::new(Arc::new(ExitSignal::default())).unwrap();
        dev.send_ctrl_alt_del();
        assert_eq!(dev.irq().read().unwrap(), 1);
        let mut keys = Vec::new();
        loop {
            let mut status = [0u8];
            dev.read(COMMAND_OFFSET, &mut status);
            if status[0] & STATUS_OUTPUT_FULL == 0 {
                break;
            }
            let mut byte = [0u8];
            dev.read(0, &mut byte);
            keys.push(byte[0]);
        }
        assert_eq!(keys, CTRL_ALT_DEL);
    }
}
