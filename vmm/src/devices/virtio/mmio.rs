//! The virtio-mmio transport (virtio spec 4.2, version 2 "modern" registers): the register
//! window the guest driver programs, which hands the queues to the device at `DRIVER_OK`.
//!
//! Queue notifications normally never reach this code: the VMM registers each queue's
//! eventfd as an ioeventfd on the `QueueNotify` register. A write that does arrive here (no
//! ioeventfd, as in tests) signals the same eventfd, so both paths behave alike.

use super::{Memory, VirtioDevice};
use crate::devices::bus::BusDevice;
use crate::persist::Persist;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use virtio_queue::{Queue, QueueState, QueueT};

/// The "virt" magic at offset 0.
const MAGIC_VALUE: u32 = 0x7472_6976;
const MMIO_VERSION: u32 = 2;
const VENDOR_ID: u32 = 0;
/// Offset of `QueueNotify`: where the ioeventfds go.
pub const NOTIFY_REG_OFFSET: u64 = 0x50;
const CONFIG_SPACE_OFFSET: u64 = 0x100;

/// Device status bits (virtio spec 2.1).
pub mod status {
    pub const ACKNOWLEDGE: u32 = 1;
    pub const DRIVER: u32 = 2;
    pub const DRIVER_OK: u32 = 4;
    pub const FEATURES_OK: u32 = 8;
    pub const DEVICE_NEEDS_RESET: u32 = 0x40;
    pub const FAILED: u32 = 0x80;
}

/// Serializes virtio-queue's `QueueState` (which has no serde) field for field. A decoded
/// state is untrusted: `Queue::try_from` validates it.
#[derive(serde::Serialize, serde::Deserialize)]
#[serde(remote = "QueueState")]
struct QueueStateDef {
    max_size: u16,
    next_avail: u16,
    next_used: u16,
    event_idx_enabled: bool,
    size: u16,
    ready: bool,
    desc_table: u64,
    avail_ring: u64,
    used_ring: u64,
}

/// `Vec<QueueState>` through [`QueueStateDef`].
mod queue_states {
    use super::{QueueState, QueueStateDef};
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Serialize, Deserialize)]
    struct Wrapped(#[serde(with = "QueueStateDef")] QueueState);

    pub fn serialize<S: Serializer>(states: &[QueueState], s: S) -> Result<S::Ok, S::Error> {
        let wrapped: Vec<Wrapped> = states.iter().map(|q| Wrapped(*q)).collect();
        wrapped.serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<QueueState>, D::Error> {
        let wrapped = Vec::<Wrapped>::deserialize(d)?;
        Ok(wrapped.into_iter().map(|w| w.0).collect())
    }
}

/// The transport's registers and the queues (the device's, once activated).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct TransportState {
    pub device_status: u32,
    pub features_select: u32,
    pub acked_features_select: u32,
    pub acked_features: u64,
    pub queue_select: u32,
    pub config_generation: u32,
    pub interrupt_status: u32,
    #[serde(with = "queue_states")]
    pub queues: Vec<QueueState>,
}

pub struct MmioTransport {
    device: Arc<Mutex<dyn VirtioDevice>>,
    memory: Memory,
    queues: Vec<Queue>,
    device_status: u32,
    features_select: u32,
    acked_features_select: u32,
    acked_features: u64,
    queue_select: u32,
    config_generation: u32,
}

impl MmioTransport {
    pub fn new(memory: Memory, device: Arc<Mutex<dyn VirtioDevice>>) -> MmioTransport {
        let queues = Self::fresh_queues(&*lock(&device));
        MmioTransport {
            device,
            memory,
            queues,
            device_status: 0,
            features_select: 0,
            acked_features_select: 0,
            acked_features: 0,
            queue_select: 0,
            config_generation: 0,
        }
    }

    fn fresh_queues(device: &dyn VirtioDevice) -> Vec<Queue> {
        device
            .queue_max_sizes()
            .iter()
            // Queue::new only refuses sizes that are not powers of two; device sizes are
            // constants, so a refusal is a programming error we still do not panic on.
            .filter_map(|size| Queue::new(*size).ok())
            .collect()
    }

    pub fn device(&self) -> &Arc<Mutex<dyn VirtioDevice>> {
        &self.device
    }

    pub fn device_status(&self) -> u32 {
        self.device_status
    }

    fn selected_queue(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_select as usize)
    }

    /// Queue registers may change only while the driver negotiates: after FEATURES_OK and
    /// before DRIVER_OK.
    fn queues_writable(&self) -> bool {
        self.device_status & (status::FEATURES_OK | status::DRIVER_OK | status::FAILED)
            == status::FEATURES_OK
    }

    fn read_register(&mut self, offset: u64) -> u32 {
        let device = lock(&self.device);
        match offset {
            0x00 => MAGIC_VALUE,
            0x04 => MMIO_VERSION,
            0x08 => device.device_type(),
            0x0c => VENDOR_ID,
            0x10 => feature_word(device.avail_features(), self.features_select),
            0x34 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.max_size())),
            0x44 => self
                .queues
                .get(self.queue_select as usize)
                .map_or(0, |q| u32::from(q.ready())),
            0x60 => device.interrupt().status(),
            0x70 => self.device_status,
            0xfc => self.config_generation,
            _ => {
                log::warn!("virtio-mmio: read of unknown register {offset:#x}");
                0
            }
        }
    }

    fn write_register(&mut self, offset: u64, value: u32) {
        match offset {
            0x14 => self.features_select = value,
            0x20 => self.ack_features(value),
            0x24 => self.acked_features_select = value,
            0x30 => self.queue_select = value,
            0x38 | 0x44 | 0x80 | 0x84 | 0x90 | 0x94 | 0xa0 | 0xa4 => {
                self.write_queue(offset, value)
            }
            NOTIFY_REG_OFFSET => {
                let device = lock(&self.device);
                if let Some(event) = device.queue_events().get(value as usize) {
                    if let Err(e) = event.write(1) {
                        log::warn!("virtio-mmio: queue {value} notification: {e}");
                    }
                }
            }
            0x64 => lock(&self.device).interrupt().acknowledge(value),
            0x70 => self.set_status(value),
            _ => log::warn!("virtio-mmio: write of unknown register {offset:#x}"),
        }
    }

    fn ack_features(&mut self, value: u32) {
        if self.device_status & (status::FEATURES_OK | status::DRIVER_OK) != 0 {
            log::warn!("virtio-mmio: driver features written after FEATURES_OK; ignored");
            return;
        }
        let shift = match self.acked_features_select {
            0 => 0,
            1 => 32,
            _ => return,
        };
        let offered = lock(&self.device).avail_features();
        let mask = 0xffff_ffffu64 << shift;
        self.acked_features =
            (self.acked_features & !mask) | ((u64::from(value) << shift) & offered & mask);
    }

    fn write_queue(&mut self, offset: u64, value: u32) {
        if !self.queues_writable() {
            log::warn!("virtio-mmio: queue register {offset:#x} written outside negotiation");
            return;
        }
        let Some(queue) = self.selected_queue() else {
            log::warn!("virtio-mmio: queue register {offset:#x} written for a missing queue");
            return;
        };
        match offset {
            0x38 => match u16::try_from(value) {
                Ok(size) => queue.set_size(size),
                Err(_) => log::warn!("virtio-mmio: queue size {value} is not a 16-bit number"),
            },
            0x44 => queue.set_ready(value == 1),
            0x80 => queue.set_desc_table_address(Some(value), None),
            0x84 => queue.set_desc_table_address(None, Some(value)),
            0x90 => queue.set_avail_ring_address(Some(value), None),
            0x94 => queue.set_avail_ring_address(None, Some(value)),
            0xa0 => queue.set_used_ring_address(Some(value), None),
            0xa4 => queue.set_used_ring_address(None, Some(value)),
            _ => {}
        }
    }

    fn set_status(&mut self, value: u32) {
        if value == 0 {
            self.reset();
            return;
        }
        // The driver only ever adds bits (spec 3.1.1); anything else is a confused driver.
        if value & self.device_status != self.device_status {
            log::warn!(
                "virtio-mmio: status {value:#x} clears bits of {:#x}; ignored",
                self.device_status
            );
            return;
        }
        let newly = value & !self.device_status;
        self.device_status = value;
        if newly & status::FEATURES_OK != 0 {
            lock(&self.device).set_acked_features(self.acked_features);
        }
        if newly & status::DRIVER_OK != 0 {
            self.activate();
        }
    }

    fn activate(&mut self) {
        let mut device = lock(&self.device);
        if device.is_activated() {
            return;
        }
        let result = match self
            .queues
            .iter()
            .position(|q| !q.ready() || !q.is_valid(&self.memory))
        {
            Some(index) => Err(super::ActivateError::InvalidQueue(index)),
            // The device owns the queues from now on; a reset gives the transport fresh ones.
            None => device.activate(self.memory.clone(), std::mem::take(&mut self.queues)),
        };
        if let Err(e) = result {
            log::warn!(
                "virtio-mmio: device type {} failed to activate: {e}",
                device.device_type()
            );
            self.device_status |= status::DEVICE_NEEDS_RESET;
            self.config_generation = self.config_generation.wrapping_add(1);
            if let Err(e) = device.interrupt().signal_config_change() {
                log::warn!("virtio-mmio: config-change interrupt: {e}");
            }
        }
    }

    fn reset(&mut self) {
        let mut device = lock(&self.device);
        device.reset();
        device.interrupt().acknowledge(u32::MAX);
        self.queues = Self::fresh_queues(&*device);
        drop(device);
        self.device_status = 0;
        self.acked_features = 0;
        self.features_select = 0;
        self.acked_features_select = 0;
        self.queue_select = 0;
    }
}

impl<'a> Persist<'a> for MmioTransport {
    type State = TransportState;
    /// The transport's own device, which the caller holds locked: a snapshot keeps every
    /// device locked until guest memory is written, so that the device thread cannot use a
    /// queue between the moment its state is read and the moment memory is saved.
    type SaveArgs = &'a dyn VirtioDevice;
    /// Guest memory and the device the transport fronts, made again from its own state.
    type RestoreArgs = (Memory, Arc<Mutex<dyn VirtioDevice>>);
    type SaveError = Infallible;
    type RestoreError = super::ActivateError;

    fn save(&self, device: &'a dyn VirtioDevice) -> Result<TransportState, Infallible> {
        let queues = if device.is_activated() {
            device.active_queues()
        } else {
            &self.queues
        };
        Ok(TransportState {
            device_status: self.device_status,
            features_select: self.features_select,
            acked_features_select: self.acked_features_select,
            acked_features: self.acked_features,
            queue_select: self.queue_select,
            config_generation: self.config_generation,
            interrupt_status: device.interrupt().status(),
            queues: queues.iter().map(Queue::state).collect(),
        })
    }

    /// A transport in the state a snapshot recorded; a device the driver had started is
    /// activated again on the restored queues.
    fn restore(
        (memory, device): (Memory, Arc<Mutex<dyn VirtioDevice>>),
        state: &TransportState,
    ) -> Result<MmioTransport, super::ActivateError> {
        let queues = {
            let dev = lock(&device);
            if state.queues.len() != dev.queue_max_sizes().len() {
                return Err(super::ActivateError::QueueCount {
                    expected: dev.queue_max_sizes().len(),
                    got: state.queues.len(),
                });
            }
            let mut queues = Vec::with_capacity(state.queues.len());
            for (index, saved) in state.queues.iter().enumerate() {
                let queue = Queue::try_from(*saved)
                    .map_err(|_| super::ActivateError::InvalidQueue(index))?;
                queues.push(queue);
            }
            queues
        };
        let mut transport = MmioTransport {
            device,
            memory,
            queues,
            device_status: state.device_status,
            features_select: state.features_select,
            acked_features_select: state.acked_features_select,
            acked_features: state.acked_features,
            queue_select: state.queue_select,
            config_generation: state.config_generation,
        };
        let mut device = lock(&transport.device);
        if state.device_status & status::FEATURES_OK != 0 {
            device.set_acked_features(state.acked_features);
        }
        if state.device_status & status::DRIVER_OK != 0
            && state.device_status & status::DEVICE_NEEDS_RESET == 0
        {
            let memory = &transport.memory;
            if let Some(index) = transport
                .queues
                .iter()
                .position(|q| !q.ready() || !q.is_valid(memory))
            {
                return Err(super::ActivateError::InvalidQueue(index));
            }
            let queues = std::mem::take(&mut transport.queues);
            device.activate(transport.memory.clone(), queues)?;
        }
        device.interrupt().restore_status(state.interrupt_status);
        drop(device);
        Ok(transport)
    }
}

fn lock(device: &Arc<Mutex<dyn VirtioDevice>>) -> MutexGuard<'_, dyn VirtioDevice + 'static> {
    device.lock().unwrap_or_else(|e| e.into_inner())
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).read_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        let value = if data.len() == 4 && offset % 4 == 0 {
            self.read_register(offset)
        } else {
            log::warn!("virtio-mmio: {}-byte read at {offset:#x}", data.len());
            0
        };
        let bytes = value.to_le_bytes();
        let n = data.len().min(4);
        data[..n].copy_from_slice(&bytes[..n]);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= CONFIG_SPACE_OFFSET {
            lock(&self.device).write_config(offset - CONFIG_SPACE_OFFSET, data);
            return;
        }
        match <[u8; 4]>::try_from(data) {
            Ok(bytes) if offset % 4 == 0 => self.write_register(offset, u32::from_le_bytes(bytes)),
            _ => log::warn!("virtio-mmio: {}-byte write at {offset:#x}", data.len()),
        }
    }
}

/// Word `select` (0: bits 0-31, 1: bits 32-63) of a 64-bit feature set, which the transport
/// shows 32 bits at a time; other words are zero.
fn feature_word(features: u64, select: u32) -> u32 {
    let word = match select {
        0 => features & 0xffff_ffff,
        1 => features >> 32,
        _ => 0,
    };
    u32::try_from(word).unwrap_or(0)
}
