//! COM1: vm-superio's 8250 UART on ports 0x3f8-0x3ff, its output to stdout or a file, its
//! interrupt on IRQ 4 through an irqfd.

use super::bus::BusDevice;
use crate::persist::Persist;
use std::convert::Infallible;
use std::io::{self, Write};
use vm_superio::serial::NoEvents;
pub use vm_superio::serial::SerialState;
use vm_superio::{Serial as Uart, Trigger};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

pub const BASE_PORT: u64 = 0x3f8;
pub const PORT_COUNT: u64 = 8;

/// The UART's interrupt: an eventfd registered as an irqfd.
pub struct IrqEvent(pub EventFd);

impl Trigger for IrqEvent {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Serializes vm-superio's `SerialState` (which has no serde) field for field.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(remote = "SerialState")]
pub struct SerialStateDef {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

pub struct Serial {
    uart: Uart<IrqEvent, NoEvents, Box<dyn Write + Send>>,
}

impl Serial {
    pub fn new(out: Box<dyn Write + Send>) -> io::Result<Serial> {
        Ok(Serial {
            uart: Uart::new(IrqEvent(EventFd::new(EFD_NONBLOCK)?), out),
        })
    }

    /// The eventfd to register as the IRQ 4 irqfd.
    pub fn irq(&self) -> &EventFd {
        &self.uart.interrupt_evt().0
    }
}

impl Persist<'_> for Serial {
    type State = SerialState;
    type SaveArgs = ();
    /// Where the guest's output goes.
    type RestoreArgs = Box<dyn Write + Send>;
    type SaveError = Infallible;
    type RestoreError = io::Error;

    fn save(&self, (): ()) -> Result<SerialState, Infallible> {
        Ok(self.uart.state())
    }

    /// A UART in the register state a snapshot recorded.
    fn restore(out: Box<dyn Write + Send>, state: &SerialState) -> io::Result<Serial> {
        let irq = IrqEvent(EventFd::new(EFD_NONBLOCK)?);
        let uart = Uart::from_state(state, irq, NoEvents, out)
            .map_err(|e| io::Error::other(format!("serial state: {e:?}")))?;
        Ok(Serial { uart })
    }
}

impl BusDevice for Serial {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match u8::try_from(offset) {
            Ok(offset) if data.len() == 1 => self.uart.read(offset),
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        let (Ok(offset), [value]) = (u8::try_from(offset), data) else {
            return;
        };
        // A failing output (a full disk, a closed pipe) must not stop the guest; the console
        // is best effort, as on a real UART with nobody listening.
        if let Err(e) = self.uart.write(offset, *value) {
            log::debug!("serial output: {e:?}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);
    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn bytes_written_to_the_data_port_come_out() {
        let out = Captured::default();
        let mut serial = Serial::new(Box::new(out.clone())).unwrap();
        for b in b"hi\n" {
            serial.write(0, &[*b]);
        }
        serial.write(0, &[1, 2]); // wrong width: ignored
        assert_eq!(&*out.0.lock().unwrap(), b"hi\n");
        let mut lsr = [0u8];
        serial.read(5, &mut lsr);
        assert_ne!(lsr[0] & 0x20, 0, "transmitter empty");
    }
}
