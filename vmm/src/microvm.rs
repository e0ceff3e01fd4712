//! A running microVM: its vCPU threads and device event loop, and what can be done to it while
//! it runs: wait for its end, pause and resume it, stop it.

use crate::devices::bus::Bus;
use crate::devices::serial::Serial;
use crate::devices::virtio::block::persist::BlockState;
use crate::devices::virtio::mmio::MmioTransport;
use crate::devices::virtio::net::persist::NetState;
use crate::devices::virtio::vsock::persist::VsockState;
use crate::devices::virtio::vsock::Vsock;
use crate::exit::{ExitSignal, VmExit};
use crate::seccomp::{self, ThreadKind};
use crate::vstate::vcpu::{self, Vcpu, VcpuContext, VcpuError};
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
    pub vsock: Option<Arc<Mutex<Vsock>>>,
    pub devices: Vec<AttachedDevice>,
    pub vcpus: Vec<Vcpu>,
    pub cmdline: String,
}

pub struct Microvm {
    vm: Vm,
    exit: Arc<ExitSignal>,
    context: VcpuContext,
    running: Vec<JoinHandle<Vcpu>>,
    paused: Vec<Vcpu>,
    serial: Arc<Mutex<Serial>>,
    vsock: Option<Arc<Mutex<Vsock>>>,
    devices: Vec<AttachedDevice>,
    event_loop_stop: Arc<AtomicBool>,
    /// Wakes the event loop so it sees `event_loop_stop` at once.
    wake_event_loop: EventFd,
    event_loop: Option<JoinHandle<()>>,
    cmdline: String,
}

impl Microvm {
    /// Starts the device event loop, then one thread per vCPU.
    pub fn start(parts: Parts) -> Result<Microvm, StartError> {
        let event_loop_stop = Arc::new(AtomicBool::new(false));
        let wake_event_loop = EventFd::new(libc::EFD_NONBLOCK).map_err(StartError::EventLoop)?;
        let waker = wake_event_loop.try_clone().map_err(StartError::EventLoop)?;
        let event_loop = spawn_event_loop(
            parts.subscribers,
            waker,
            event_loop_stop.clone(),
            parts.exit.clone(),
        )?;
        let context = VcpuContext {
            pio: Arc::new(parts.pio),
            mmio: Arc::new(parts.mmio),
            exit: parts.exit.clone(),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let mut microvm = Microvm {
            vm: parts.vm,
            exit: parts.exit,
            context,
            running: Vec::new(),
            paused: parts.vcpus,
            serial: parts.serial,
            vsock: parts.vsock,
            devices: parts.devices,
            event_loop_stop,
            wake_event_loop,
            event_loop: Some(event_loop),
            cmdline: parts.cmdline,
        };
        microvm.resume()?;
        Ok(microvm)
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

    /// Stops the vCPUs, each after completing the instruction it was in; devices keep running.
    pub fn pause(&mut self) {
        let threads = std::mem::take(&mut self.running);
        self.paused
            .extend(vcpu::stop_all(&self.context.stop, threads));
    }

    /// The vCPUs of a paused VM (empty while it runs).
    pub fn paused_vcpus(&self) -> &[Vcpu] {
        &self.paused
    }

    /// Runs the vCPUs again.
    pub fn resume(&mut self) -> Result<(), VcpuError> {
        self.context.stop.store(false, Ordering::Release);
        for vcpu in std::mem::take(&mut self.paused) {
            self.running.push(vcpu.spawn(self.context.clone())?);
        }
        Ok(())
    }

    /// Stops the vCPUs and the event loop and frees the VM.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        self.pause();
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
