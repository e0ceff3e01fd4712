//! A running microVM: its vCPU threads and device event loop, and what can be done to it while
//! it runs: wait for its end, pause and resume it, stop it.

use crate::devices::bus::Bus;
use crate::devices::i8042::I8042;
use crate::devices::serial::Serial;
use crate::devices::virtio::block::persist::BlockState;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::persist::NetState;
use crate::devices::virtio::vsock::persist::VsockState;
use crate::devices::virtio::vsock::Vsock;
use crate::exit::{ExitSignal, VmExit};
use crate::seccomp::{self, ThreadKind};
use crate::vstate::vcpu::{Vcpu, VcpuContext, VcpuError, VcpuThreads};
use crate::vstate::vcpu_state::VcpuState;
use crate::vstate::vm::Vm;
use event_manager::{EventManager, EventOps, EventSet, Events, MutEventSubscriber, SubscriberOps};
use logging::Chain;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;
use vmm_sys_util::eventfd::EventFd;

pub type Subscriber = Arc<Mutex<dyn MutEventSubscriber + Send>>;

/// Why a VM could not start running.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("starting the event loop")]
    EventLoop(#[source] std::io::Error),
    #[error("starting the event loop")]
    EventManager(#[source] event_manager::Error),
}

/// What a virtio device was made from: enough to make it again on restore. Each variant holds
/// that device's [`crate::persist::Persist`] state, which never changes while the device lives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DeviceSpec {
    Block(BlockState),
    Vsock(VsockState),
    /// The entropy device is made from nothing.
    Rng,
    Net(NetState),
}

/// A virtio device on the MMIO bus, in attach order (which fixes its address and IRQ).
pub struct AttachedDevice {
    pub spec: DeviceSpec,
    pub transport: Arc<Mutex<MmioTransport>>,
}

/// Everything a VM needs to run, built by a boot ([`crate::builder::boot`]) or a restore
/// ([`crate::snapshot::restore`]).
pub struct Parts {
    pub vm: Vm,
    pub exit: Arc<ExitSignal>,
    pub pio: Bus,
    pub mmio: Bus,
    pub subscribers: Vec<Subscriber>,
    pub serial: Arc<Mutex<Serial>>,
    pub i8042: Arc<Mutex<I8042>>,
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    pub devices: Vec<AttachedDevice>,
    pub vcpus: Vec<Vcpu>,
    pub cmdline: String,
}

pub struct Microvm {
    vm: Vm,
    exit: Arc<ExitSignal>,
    vcpus: VcpuThreads,
    vcpu_count: u8,
    serial: Arc<Mutex<Serial>>,
    i8042: Arc<Mutex<I8042>>,
    vsock: Option<Arc<Mutex<Vsock>>>,
    devices: Vec<AttachedDevice>,
    event_loop_stop: Arc<AtomicBool>,
    /// Wakes the event loop so it sees `event_loop_stop` at once.
    wake_event_loop: EventFd,
    event_loop: Option<JoinHandle<()>>,
    cmdline: String,
}

impl Microvm {
    /// Starts the device event loop, then one thread per vCPU, running.
    pub fn start(parts: Parts) -> Result<Microvm, StartError> {
        Self::start_as(parts, false)
    }

    /// [`Microvm::start`] with the vCPUs parked until [`Microvm::resume`].
    pub fn start_paused(parts: Parts) -> Result<Microvm, StartError> {
        Self::start_as(parts, true)
    }

    fn start_as(parts: Parts, paused: bool) -> Result<Microvm, StartError> {
        let event_loop_stop = Arc::new(AtomicBool::new(false));
        let wake_event_loop = EventFd::new(libc::EFD_NONBLOCK).map_err(StartError::EventLoop)?;
        let waker = wake_event_loop.try_clone().map_err(StartError::EventLoop)?;
        let mut event_loop = Some(spawn_event_loop(
            parts.subscribers,
            waker,
            event_loop_stop.clone(),
            parts.exit.clone(),
        )?);
        let context = VcpuContext {
            pio: Arc::new(parts.pio),
            mmio: Arc::new(parts.mmio),
            exit: parts.exit.clone(),
        };
        let vcpu_count = u8::try_from(parts.vcpus.len()).unwrap_or(u8::MAX);
        let vcpus = match VcpuThreads::start(parts.vcpus, context, paused) {
            Ok(vcpus) => vcpus,
            Err(e) => {
                event_loop_stop.store(true, Ordering::Release);
                let _ = wake_event_loop.write(1);
                if let Some(thread) = event_loop.take() {
                    let _ = thread.join();
                }
                return Err(e.into());
            }
        };
        Ok(Microvm {
            vm: parts.vm,
            exit: parts.exit,
            vcpus,
            vcpu_count,
            serial: parts.serial,
            i8042: parts.i8042,
            vsock: parts.vsock,
            devices: parts.devices,
            event_loop_stop,
            wake_event_loop,
            event_loop,
            cmdline: parts.cmdline,
        })
    }

    /// Waits for the VM to stop, up to `timeout` (`None`: forever).
    pub fn wait(&self, timeout: Option<Duration>) -> Option<VmExit> {
        self.exit.wait(timeout)
    }

    /// The command line the kernel got (empty for a restored VM).
    pub fn cmdline(&self) -> &str {
        &self.cmdline
    }

    pub fn vm(&self) -> &Vm {
        &self.vm
    }

    pub fn vsock(&self) -> Option<&Arc<Mutex<Vsock>>> {
        self.vsock.as_ref()
    }

    pub fn serial(&self) -> &Arc<Mutex<Serial>> {
        &self.serial
    }

    pub fn devices(&self) -> &[AttachedDevice] {
        &self.devices
    }

    /// Why the VM stopped, once it has.
    pub fn exit_signal(&self) -> &Arc<ExitSignal> {
        &self.exit
    }

    /// Stops the vCPUs, each after completing the instruction it was in; devices keep running.
    pub fn pause(&mut self) {
        self.vcpus.pause();
    }

    /// Whether the vCPUs are stopped (paused, or the VM has ended).
    pub fn is_paused(&self) -> bool {
        self.vcpus.is_paused()
    }

    /// Every vCPU's state, in id order; the VM must be paused.
    pub fn vcpu_states(&self, msr_list: &[u32]) -> Result<Vec<VcpuState>, VcpuError> {
        self.vcpus.save_states(msr_list)
    }

    pub fn vcpu_count(&self) -> u8 {
        self.vcpu_count
    }

    /// Presses Ctrl+Alt+Del on the guest's keyboard.
    pub fn send_ctrl_alt_del(&self) {
        self.i8042
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send_ctrl_alt_del();
    }

    /// Runs the vCPUs again.
    pub fn resume(&mut self) {
        self.vcpus.resume();
    }

    /// Stops the vCPUs and the event loop and frees the VM.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.vcpus.end();
        self.event_loop_stop.store(true, Ordering::Release);
        let _ = self.wake_event_loop.write(1);
        if let Some(event_loop) = self.event_loop.take() {
            let _ = event_loop.join();
        }
    }
}

impl Drop for Microvm {
    fn drop(&mut self) {
        self.shut_down();
    }
}

/// Makes the event loop return when the VM stops, so stopping does not wait for a poll timeout.
struct Waker(EventFd);

impl MutEventSubscriber for Waker {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        let _ = self.0.read();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.0, EventSet::IN)) {
            log::error!("event loop: cannot register its stop event: {e}");
        }
    }
}

fn spawn_event_loop(
    subscribers: Vec<Subscriber>,
    waker: EventFd,
    stop: Arc<AtomicBool>,
    exit: Arc<ExitSignal>,
) -> Result<JoinHandle<()>, StartError> {
    let mut manager = EventManager::<Subscriber>::new().map_err(StartError::EventManager)?;
    for subscriber in subscribers {
        manager.add_subscriber(subscriber);
    }
    manager.add_subscriber(Arc::new(Mutex::new(Waker(waker))));
    std::thread::Builder::new()
        .name("devices".into())
        .spawn(move || {
            // Before the first event: guest-filled queues are read only under the filter.
            if let Err(e) = seccomp::install(ThreadKind::EventLoop) {
                exit.post(VmExit::VmmError(Chain(&e).to_string()));
                return;
            }
            while !stop.load(Ordering::Acquire) {
                if let Err(e) = manager.run() {
                    exit.post(VmExit::VmmError(format!("device event loop: {e}")));
                    return;
                }
            }
        })
        .map_err(StartError::EventLoop)
}
